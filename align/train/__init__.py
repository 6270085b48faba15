"""Training: the loss functions and their registry, the offline trainer and its checkpoints,
the online trainer, multi-process launch, precision, and the BMC and UPO additions.
"""
