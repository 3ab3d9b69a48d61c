"""The offline stand-in world: SynthFlowers (drawn flowers) and ToyCLIP (a tiny CLIP this project pretrains).

Nothing in the real layer imports this package by name: ``clipft_utils.plugins`` imports its modules,
which register the ``synthflowers`` dataset and the ``ToyCLIP`` model like any plug-in. Every number
produced with either is labelled STAND-IN.
"""
