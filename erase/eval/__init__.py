"""Evaluation: classifier accuracy (FA/RA), FID, NudeNet nudity rates, membership inference, and attacks that try to
bring an erased concept back (concept inversion, adversarial prompts, relearning) over generated images."""
