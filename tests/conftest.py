import sys
from pathlib import Path

import torch

# Helpers shared by the tests (e.g. the oracle prior) live next to them.
sys.path.insert(0, str(Path(__file__).parent))
# Small tensors run fastest on one thread, and CI machines are shared.
torch.set_num_threads(1)
