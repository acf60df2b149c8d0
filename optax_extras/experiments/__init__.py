"""Experiments of optax-extras: the `optax-extras compare` command.

`data` loads digits, MNIST and CIFAR-10; `models` holds the Flax NNX models;
`optimizers` names the optimizers and parses their options; `train` trains
one model with each optimizer; `results` and `plots` write the outputs;
`cli` is the command line.
"""
