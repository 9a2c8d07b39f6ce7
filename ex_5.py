"""EX-5: EX-4 with the Lion optimizer, for twice the epochs.

What it tests: whether Lion (Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms"), which topped ImageNet leaderboards, beats Adam on this fine-tuning task.

Recipe: EX-4 (pretrained EfficientNetV2-S at 128 px, crop+flip, cosine schedule, batch
128) with Lion (lion-pytorch, betas 0.9/0.99), lr 3e-5, decoupled weight decay 3e-4,
30 epochs.

Why these values: Lion's update is sign(.), so every coordinate moves by the full lr;
its authors advise an lr 3-10x smaller than AdamW's and a decoupled weight decay 3-10x
larger, so that the decay per step, lr x wd, stays what it was with AdamW. That rule is
relative to AdamW; EX-4 uses Adam, whose weight decay is an L2 term added to the gradient
(coupled), so there is no lr x wd in EX-4 to match. We take EX-4's lr 1e-4 as if it were
AdamW's: lr 3e-5 (~3.3x smaller) and decoupled wd 3e-4 (3x larger), the paper's ratios at
their low end. The report does not state its Lion settings; 30 epochs is its "twice the
epochs of EX-4". Batch 128 is this repo's choice (see EX-3).

Changed from EX-4: optimizer Lion, lr 3e-5, weight decay 3e-4, 30 epochs.

Run:
    python ex_5.py
    python ex_5.py --smoke

Expected: the report got 96.14% / 83.07% (CIFAR-10 / CIFAR-100), no better than EX-4 at
twice the cost. Needs a GPU; see README for what was measured here.
"""
from common.stopping import stop_while_starting
stop_while_starting(__name__)  # before torch loads: a stop in the first seconds exits quietly

from common.config import Recipe
from common.launch import main

RECIPE = Recipe(
    model="efficientnet_v2_s",
    pretrained=True,
    epochs=30,
    batch_size=128,
    optimizer="lion",
    lr=3e-5,
    weight_decay=3e-4,
    scheduler="cosine",
    image_size=128,
    augment="crop_flip",
)

if __name__ == "__main__":
    main(RECIPE, __doc__, __file__)
