"""What generative models are for beyond sampling (issue 9): pure, tested functions.

* ``classify``: classification through Bayes' rule with class-conditional likelihoods, and the
  generative-vs-discriminative learning curves of Ng & Jordan (2002);
* ``memorization``: nearest-training-image distances of samples against those of held-out
  images (data-copying test of Meehan et al. 2020, near-copy share, train-test NLL gap);
* ``ood``: out-of-distribution detection by likelihood, typicality and a likelihood ratio
  against a simple background model (Nalisnick et al. 2019), scored by AUROC.

Functions here take tensors and models and return numbers; the evaluators and
``scripts/analysis.py`` wire them to datasets and run directories.
"""
