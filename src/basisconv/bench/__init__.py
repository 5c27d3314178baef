"""Speed benchmarks: how fast basis convolutions run against the dense ones they replace
(``layers``: single conv shapes and the whole ResNet-18), and how fast the real training
loop runs (``train``), with the timing machinery of :mod:`basisconv.timing` (which the
time budget of layer selection uses too).

They live in the package, not in ``scripts/``, so that they can be tested and reused; the
scripts only parse flags, call in here and print. Each writes its results with a JSON
sidecar, a :class:`basisconv.records.RunRecord` of kind ``benchmark``. Plots of the
results belong to :mod:`basisconv.analysis`, which sits above the producers: nothing here
imports it.
"""
