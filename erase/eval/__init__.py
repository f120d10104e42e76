"""Evaluation: classifier accuracy (FA/RA), FID and NudeNet nudity rates over generated images."""
