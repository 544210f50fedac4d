# Fast-SCNN (two branches, depthwise-separable head) at 256×256: a third architecture and resolution
# beside the demo DeepLabV3 and the 64-px UNet, trained on CPU by `tools/train.py` on the 256-px synthetic
# benchmark (`tools/generate_data.py --size 256 --out data/synthetic_shapes_256`). It exists to check
# that the defense's presets hold on a model they were not tuned on (docs/benchmarks/presets.md).
_base_ = [
    'mmseg::_base_/default_runtime.py',
    '../_base_/synthetic_shapes.py',
    '../_base_/schedule_synthetic_2k.py',
]
crop_size = (256, 256)
data_root = 'data/synthetic_shapes_256'
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='FastSCNN',
        downsample_dw_channels=(32, 48),
        global_in_channels=64,
        global_block_channels=(64, 96, 128),
        global_block_strides=(2, 2, 1),
        global_out_channels=128,
        higher_in_channels=64,
        lower_in_channels=128,
        fusion_out_channels=128,
        out_indices=(0, 1, 2),
        norm_cfg=norm_cfg,
        align_corners=False),
    decode_head=dict(
        type='DepthwiseSeparableFCNHead',
        in_channels=128,
        channels=128,
        concat_input=False,
        num_classes=4,
        in_index=-1,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=[
        dict(type='FCNHead', in_channels=128, channels=32, num_convs=1, num_classes=4, in_index=-2,
             norm_cfg=norm_cfg, concat_input=False, align_corners=False,
             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
        dict(type='FCNHead', in_channels=64, channels=32, num_convs=1, num_classes=4, in_index=-3,
             norm_cfg=norm_cfg, concat_input=False, align_corners=False,
             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    ],
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
# NCCL across GPUs; tools/test.py and tools/train.py switch to gloo on a machine without CUDA.
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))
