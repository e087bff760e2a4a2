"""A synthetic Human3.6M written in the original's exact on-disk layout (caches, ``matlab_meta.txt``,
JPEG frames), so the real converter and input path run without the dataset.

* :mod:`~kinpose_jax.synthetic.h36m` — the generator (poses from a kinematic tree, cameras, files).
* :mod:`~kinpose_jax.synthetic.render` — draws a person of capsules with OpenCV's own projection.
"""
