# The demo DeepLabV3 fine-tuned adversarially: each training batch is replaced by PGD-2 at eps = 4 levels of
# 255 on the model's own training loss (`model.train_cfg.adversarial`, read by equi_ext.mmseg), starting
# from the demo weights. `tools/train.py` trains it on CPU.
_base_ = ['./deeplabv3_r18c16-d8_1xb8-3k_synthetic-128x128.py']
custom_imports = dict(imports=['equi_ext.mmseg'], allow_failed_imports=False)
model = dict(train_cfg=dict(adversarial=dict(attack=dict(type='pgd', eps=4, steps=2))))
load_from = 'checkpoints/deeplabv3_r18c16-d8_synthetic-128x128.pth'

max_iters = 1000
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=500)
default_hooks = dict(checkpoint=dict(interval=500))
