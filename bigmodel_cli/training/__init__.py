"""The training core that every trainer uses: `train` and `tune` (core.py), multi-worker (multi_worker.py), DP-SGD
(privacy.py), per-epoch checkpoints for --resume (checkpoint.py), and the rules they and `federated` share
(rules.py: early stopping, resume checks, the config hash, the decision threshold). No verb imports another verb:
they meet here."""
