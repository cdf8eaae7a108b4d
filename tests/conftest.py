"""Test-suite settings shared by every test file."""

import os
import tempfile

import torch

# The channels_last probe's cache (simclr.channels_last): one per test session, not the user's home.
os.environ.setdefault("SIMCLR_CACHE", tempfile.mkdtemp(prefix="simclr-test-cache-"))

# Tiny tensors gain nothing from a second thread, and OpenMP oversubscription on a loaded 2-core machine
# makes the suite several times slower.
torch.set_num_threads(1)
