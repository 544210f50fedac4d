# DeepLabV3 R50-D8 on COCO-Stuff 164k (mmseg's own config, unmodified), paper settings
# for COCO: ε = 4, ε_v = 1.25ε = 5, η = 2ε_v = 10, T = 20 ('paper' transforms).
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-80k_coco-stuff164k-512x512.py']
custom_imports = dict(imports=['equi_ext.mmseg'], allow_failed_imports=False)
model = dict(
    test_cfg=dict(
        defense=dict(type='equi', preset='paper', eps_v=5, step_size=10, steps=20),
        attack=dict(type='pgd', eps=4, steps=20),
        feature_layer='backbone'))
