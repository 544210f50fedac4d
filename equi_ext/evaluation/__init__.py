"""The evaluation layer: the demo assets and every measurement the tools run, each as one library call.

``demo``: the embedded default (synthetic data, demo DeepLabV3 and Mask R-CNN, their checkpoints) and
the README's first command as a function; ``backends``: one (attack, defense) cell or a per-image worst
case on either demo model, through its framework's own test loop and evaluator. Built on them:
``robustness`` (attacks × defenses × seeds), ``sanity_checks`` (the evaluation-honesty checks), ``ablations``
(one knob of the defense at a time), ``detection`` (attack and corruption detection, detect-then-defend),
``visual_report`` (per-image panels and equivariance maps), ``speed`` (time and memory against a vanilla
forward), ``tuning`` (defense settings chosen on the tuning split) and ``ssl_heads`` (the SSL baselines'
heads). A tool in ``tools/`` parses its arguments and calls one of these.
"""
