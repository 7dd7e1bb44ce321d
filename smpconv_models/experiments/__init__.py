"""Experiments: commands whose numbers BENCHMARKS.md and ``experiments/README.md`` record.

The paper's claims, on a CPU in minutes (see ``experiments/README.md``):

* ``python -m smpconv_models.experiments.fit``: function fitting with moving vs fixed points (Sec. 4.1, Fig. 3);
* ``python -m smpconv_models.experiments.ablate``: learnable positions / radii, initial spread and radius, number
  of points (Tables 6-9) on the embedded digits.

Beyond the paper: ``small_data`` (the small-data sequence recipe against ROCKET) and ``kernels`` (SMP vs MLP kernels
off the grid, on irregular series and point sets; also as the ``irregular_kernels`` and ``point_kernels`` commands).
"""
