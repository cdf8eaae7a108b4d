"""Test-suite settings shared by every test file."""

import torch

# Tiny tensors gain nothing from a second thread, and OpenMP oversubscription on a loaded 2-core machine
# makes the suite several times slower.
torch.set_num_threads(1)
