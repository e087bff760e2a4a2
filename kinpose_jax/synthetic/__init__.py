"""A synthetic Human3.6M written in the original's exact on-disk layout (caches, ``matlab_meta.txt``,
JPEG frames), so the real converter and input path run without the dataset.

* :mod:`~kinpose_jax.synthetic.h36m` — the generator (poses from a kinematic tree, cameras, files).
* :mod:`~kinpose_jax.synthetic.render` — draws a person of capsules with OpenCV's own projection.
"""

#: The default set (what ``configs/synthetic.py`` trains on, configs/default.py's ``data.synthetic_*``
#: fields, and what the README's ``data_prep/make_synthetic_h36m.py`` writes): 16 x 40 train +
#: 4 x 16 validmin frames of 320 px. Here, importing nothing, so configs read it before JAX starts.
DEFAULTS = dict(train_folders=16, frames_per_folder=40, valid_folders=4, valid_frames_per_folder=16, image_size=320,
                seed=0)
