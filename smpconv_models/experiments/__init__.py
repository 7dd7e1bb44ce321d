"""The paper's claims as commands that run on a CPU in minutes (see ``experiments/README.md``).

* ``python -m smpconv_models.experiments.fit``: function fitting with moving vs fixed points (Sec. 4.1, Fig. 3);
* ``python -m smpconv_models.experiments.ablate``: learnable positions / radii, initial spread and radius, number
  of points (Tables 6-9) on the embedded digits.
"""
