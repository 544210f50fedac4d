"""The evaluation layer: the demo assets and the backends the benchmark, honesty and detection tools drive.

``demo``: the embedded default (synthetic data, demo DeepLabV3 and Mask R-CNN, their checkpoints) and
the README's first command as a function; ``backends``: one (attack, defense) cell or a per-image worst
case on either demo model, through its framework's own test loop and evaluator.
"""
