# DeepLabV3 R50-D8 on Cityscapes (mmseg's own config, unmodified), paper settings for
# standard models: ε = 4, ε_v = 1.5ε = 6, η = 2ε_v = 12, T = 20 ('paper' preset).
# Cityscapes runs in sliding-window mode in some configs: the defense purifies the whole
# image once, then stock sliding-window inference runs on it. At 1024×2048 the paper's eight
# transformed copies in one graph need several times a forward's memory: chunked=True runs one
# copy at a time (same gradient, a fraction of the memory).
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py']
custom_imports = dict(imports=['equi_ext.mmseg'], allow_failed_imports=False)
model = dict(
    test_cfg=dict(
        defense=dict(type='equi', preset='paper', eps_v=6, step_size=12, steps=20, chunked=True),
        attack=dict(type='pgd', eps=4, steps=20),
        feature_layer='backbone'))
