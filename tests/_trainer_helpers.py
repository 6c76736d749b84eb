"""Shared by the trainer tests: a small dual encoder following docs/CONTRACTS.md s5 and its data.

``PairModel`` uses the project's ``cmc_loss`` plus a per-sample-mean "local" term standing for
TSA/FSA (so the accumulation scaling of both kinds of term is exercised), and dropout (so the
RNG restore on resume is exercised). ``nan_at`` makes the loss NaN at that step.
"""
import torch
import torch.nn.functional as F

from loupe_core.config import RunConfig
from loupe_core.objective.losses import LossOutput, cmc_loss
from loupe_core.objective.step import StepContext

IMG, VOCAB, LEN, DIM = 12, 50, 6, 8


class PairModel(torch.nn.Module):
    bank_terms = ("cmc",)   # its L_CMC is over the whole accumulated batch (the trainer's bank)

    def __init__(self, local: bool = True, dropout: float = 0.1, nan_at=None):
        super().__init__()
        self.img = torch.nn.Linear(IMG, DIM)
        self.tok = torch.nn.Embedding(VOCAB, DIM)
        self.txt = torch.nn.Linear(DIM, DIM)
        self.drop = torch.nn.Dropout(dropout)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.local, self.nan_at = local, nan_at

    def embed(self, batch):
        img = F.normalize(self.img(self.drop(batch["images"])), dim=-1)
        mask = batch["text_mask"].unsqueeze(-1).float()
        pooled = (self.tok(batch["input_ids"]) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return img, F.normalize(self.txt(pooled), dim=-1)

    def forward(self, batch, step=None, embed_only=False):
        img, txt = self.embed(batch)
        if embed_only:
            return img, txt
        step = step or StepContext()
        terms = {"cmc": cmc_loss(img, txt, self.logit_scale.exp(), bank=step.bank, ranks=step.ranks)}
        if self.local:
            terms["local"] = ((img - txt) ** 2).sum(-1).mean()
        if self.nan_at is not None and step.index + 1 == self.nan_at:
            terms["cmc"] = terms["cmc"] * float("nan")
        total = sum(terms.values())
        return LossOutput(total, terms, {"scale": float(self.logit_scale.detach().exp())})


class PairData(torch.utils.data.Dataset):
    """n random (image vector, token ids) pairs, fixed by ``seed``."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, IMG, generator=g)
        self.ids = torch.randint(1, VOCAB, (n, LEN), generator=g)
        self.lens = torch.randint(2, LEN + 1, (n,), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"images": self.images[i], "input_ids": self.ids[i], "len": int(self.lens[i])}


def collate(items):
    lens = torch.tensor([it["len"] for it in items])
    return {"images": torch.stack([it["images"] for it in items]),
            "input_ids": torch.stack([it["input_ids"] for it in items]),
            "text_mask": torch.arange(LEN)[None, :] < lens[:, None]}


def pair_config(**train) -> RunConfig:
    """A RunConfig for PairModel runs: CMC + local term, CPU, no progress bar, no TensorBoard."""
    cfg = RunConfig(name="pairs")
    for key, value in {"batch_size": 8, "steps": 6, "device": "cpu", "progress": False, "tensorboard": False,
                       **train}.items():
        setattr(cfg.train, key, value)
    cfg.eval.final = False
    return cfg


def tiny_model(vocab_size: int, **fields):
    """A tiny untrained ``LoupeModel`` in eval mode, seeded: width 16, one layer a tower, 32-pixel
    images of 8-pixel patches; ``fields`` override any ``ModelConfig`` field."""
    from loupe_core.model import LoupeModel

    torch.manual_seed(0)
    return LoupeModel({"image_size": 32, "patch_size": 8, "image_dim": 16, "image_depth": 1, "image_heads": 2,
                       "text_vocab_size": vocab_size, "text_dim": 16, "text_depth": 1, "text_heads": 2,
                       "text_max_tokens": 24, "embed_dim": 16, "top_k": 3, "num_random": 1, **fields}).eval()


def shapesworld_run(root: str, *overrides: str):
    """(RunConfig, LoupeObjective, RunData) of the ``tiny`` config on a tiny ShapesWorld under ``root``."""
    from loupe_core.config import load_config
    from loupe_core.objective import LoupeObjective
    from loupe_core.train.distributed import DistContext
    from loupe_core.pipeline import build_data, seed_everything

    cfg = load_config("tiny", [f"data.root={root}", "train.device=cpu", "train.tensorboard=false", *overrides])
    seed_everything(cfg.train.seed)
    data = build_data(cfg, DistContext())
    return cfg, LoupeObjective(cfg.model, cfg.loss), data


def write_tiny_checkpoint(root, step: int) -> str:
    """An untrained ``tiny`` model saved as run ``root``/run at ``step`` (data under ``root``/data): the run dir."""
    from loupe_core.config import load_config
    from loupe_core.objective import LoupeObjective
    from loupe_core.train import checkpoint as ckpt

    cfg = load_config("tiny", [f"data.root={root / 'data'}", "data.train_size=6", "data.eval_size=4",
                               "model.text_max_tokens=24", "eval.split=heldout"])
    model = LoupeObjective(cfg.model, cfg.loss)
    run = root / "run"
    ckpt.save_checkpoint(ckpt.checkpoint_path(str(run), step), {"model": model.state_dict(), "config": cfg.to_dict(),
                                                               "step": step})
    return str(run)
