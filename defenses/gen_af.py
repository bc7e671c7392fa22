"""Gen-AF (Zhou et al. 2024, "Securely Fine-tuning Pre-trained Encoders Against Adversarial Examples", S&P'24,
arXiv 2403.10801), implemented from what the authors' code does (papers.md section 3).

Despite the name there is no genetic algorithm in the code: "genetic" means inheriting the pretrained
model's knowledge. Two stages, two defenses here:

1. `GenAFDualTrack` (config `genaf_stage1`): adversarial fine-tuning with two optimizers (encoder and head)
   stepping on CE(f(x'), y) + 20 * GR(f(x), f(x'), y), GR being the genetic regularizer below.
2. `GenAF` (config `genaf`, which starts from stage 1 with `init_from`): a robustness-sensitivity probe of
   every conv and linear weight (cached as a preparation step), then clean fine-tuning of only the least
   sensitive 20 % of those layers.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from attacks.base import attack_mode, parse_eps
from attacks.errors import choose
from attacks.pgd import PGD
from datamodules.base import ImageFile, LazyImages, Pairs
from defenses.base import AdversarialStudent
from lightning_modules.classifier import replace_head
from lightning_modules.modules import StudentModule

HEADS = ("mlp", "linear")


class NonLinearClassifier(nn.Module):
    """The Gen-AF head: FC(d, h) - ReLU - Dropout(0.2) - FC(h, h) - ReLU - FC(h, C)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.2):
        super().__init__()
        self.out_features = num_classes
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def genetic_regularization(
    clean_logits: torch.Tensor,
    adv_logits: torch.Tensor,
    y: torch.Tensor,
    sample_weight: torch.Tensor,
    eps: float = 1e-7,
) -> torch.Tensor:
    """GR: matches the pairwise-similarity structure of the adversarial logits to that of the clean ones.

    The seven steps of the authors' `utils/gr.py` (papers.md 3.3):
    1. W_ij = tanh((w_i + w_j) / 32), with w the per-example clean cross-entropy (not detached);
    2. Delta_ij = 2 * M_ij * W_ij, M_ij = +1 for pairs of different classes and -1 for the same class;
    3. both logit sets are L2-normalized per row (a zero row stays zero);
    4. "model" side from the clean logits: D = 1 - A A^T, diagonal set to 1e5, each row minus its minimum,
       diagonal zeroed, clamped to [eps, 2 - eps]; S_A = 1 - D;
    5. "target" side from the adversarial logits: the same D, then D <- (1 - W) * D + Delta, clamped; S_B = 1 - D;
    6. P = (S_B + 1) / 2 and Q = (S_A + 1) / 2, each row normalized to sum 1;
    7. GR = sum_ij P log(P / Q) + (1 - P) log((1 - P) / (1 - Q)), logs of (value + eps); a sum, no stop-gradient.
    """
    n = len(y)
    weight = torch.tanh((sample_weight[:, None] + sample_weight[None, :]) / 32.0)
    sign = torch.where(y[:, None] == y[None, :], -1.0, 1.0).to(weight)
    delta = 2.0 * sign * weight
    eye = torch.eye(n, dtype=torch.bool, device=y.device)

    def distances(z: torch.Tensor) -> torch.Tensor:
        z = torch.nan_to_num(z / (z.norm(dim=1, keepdim=True) + eps))
        d = (1 - z @ z.T).masked_fill(eye, 1e5)
        d = (d - d.min(dim=1, keepdim=True).values).masked_fill(eye, 0.0)
        return d

    model_side = 1 - distances(clean_logits).clamp(eps, 2 - eps)
    target_side = 1 - ((1 - weight) * distances(adv_logits) + delta).clamp(eps, 2 - eps)
    q = (model_side + 1) / 2
    p = (target_side + 1) / 2
    q = q / q.sum(dim=1, keepdim=True)
    p = p / p.sum(dim=1, keepdim=True)

    def kl(a, b):
        return (a * ((a + eps).log() - (b + eps).log())).sum()

    return kl(p, q) + kl(1 - p, 1 - q)


def _set_head(module: StudentModule, head: str, hidden: int) -> None:
    choose("head", head, HEADS)
    if head == "mlp":
        features = module.model.backbone.num_features
        replace_head(module.model, NonLinearClassifier(features, module.num_classes, hidden))


class GenAFDualTrack(AdversarialStudent):
    """Gen-AF stage 1: genetic-directed dual-track adversarial fine-tuning.

    The encoder (everything but the head) and the head have their own Adam optimizers (lr 1e-4 and 5e-3,
    weight decay 8e-4, ExponentialLR(0.96) per epoch) and both step on CE(f(x'), y) + gr_weight * GR. x' is
    L-inf PGD on CE in eval mode (the code: eps 0.03, 10 steps of 0.007, no random start). Unlike the code,
    the attack sees the same normalized model as training (normalization lives inside the model). The head
    is the non-linear MLP of the code by default (`head="linear"` keeps a linear one); it is new, so it starts
    from a random initialization. The kept checkpoint is the best robust one on the validation split (the
    code keeps the best robust test accuracy).

    Args:
        gr_weight: weight of the genetic regularizer (20).
        encoder_lr, head_lr, weight_decay, gamma: the two optimizers and their schedules.
        head: mlp or linear; head_hidden: the MLP's width (512).
        **kwargs: see `AdversarialStudent` (`train_attack`: the training PGD, by default the code's) and
            `StudentModule`.
    """

    train_attack_defaults = {"eps": 0.03, "step_size": 0.007, "random_start": False}  # 10 steps, as the base's

    def __init__(
        self,
        model,
        gr_weight: float = 20.0,
        encoder_lr: float = 1e-4,
        head_lr: float = 5e-3,
        weight_decay: float = 8e-4,
        gamma: float = 0.96,
        head: str = "mlp",
        head_hidden: int = 512,
        **kwargs,
    ):
        super().__init__(model, **kwargs)
        _set_head(self, head, head_hidden)
        self.gr_weight = gr_weight
        self.encoder_lr, self.head_lr, self.weight_decay, self.gamma = encoder_lr, head_lr, weight_decay, gamma
        self.automatic_optimization = False  # two optimizers step on one loss

    def configure_optimizers(self):
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        head_ids = {id(p) for p in self.model.head.parameters()}
        encoder = [p for p in self.model.parameters() if p.requires_grad and id(p) not in head_ids]
        opt_e = torch.optim.Adam(encoder, lr=self.encoder_lr, weight_decay=self.weight_decay)
        opt_h = torch.optim.Adam(head, lr=self.head_lr, weight_decay=self.weight_decay)
        scheds = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=self.gamma) for o in (opt_e, opt_h)]
        return [opt_e, opt_h], scheds

    def training_loss(self, x, y):
        x_adv = self.attack(self.model, x, y)
        adv_logits = self.model(x_adv)
        clean_logits = self.model(x)
        weight = F.cross_entropy(clean_logits, y, reduction="none")
        gr = genetic_regularization(clean_logits, adv_logits, y, weight)
        ce = F.cross_entropy(adv_logits, y)
        self.log_dict({"train/gr": gr.detach(), "train/ce_adv": ce.detach()})
        return ce + self.gr_weight * gr, adv_logits


class GenAF(StudentModule):
    """Gen-AF stage 2: "evolutionary adaptability" fine-tuning of the least robustness-sensitive layers.

    Starts from stage 1 (`init_from: genaf_stage1`). `prepare` is the authors' robust-contribution probe: an
    adversarial set (PGD, `probe_eps` 8/255, 10 steps of 2/255 with random start: the code's 2/225 is read as
    the usual 2/255) is built on the target training split with the stage-1 model; then, for every conv and
    linear weight W alone, gradient ascent on the adversarial cross-entropy (SGD, lr 1, `probe_epochs` epochs),
    projecting Delta W after each epoch to ||Delta W||_F <= `probe_bound` * ||W||_F, records the largest loss
    increase. The `fraction` of layers with the smallest increase (20 %; at least one) are unfrozen (weight and
    bias) and fine-tuned on clean data with Adam (lr 1e-3, weight decay 8e-4). As in the code, the Adam state
    is reset every epoch and batch-norm statistics keep updating (`freeze_bn_stats=False`); the kept checkpoint
    is the best clean one on the validation split.

    Args:
        fraction: share of the probed layers to unfreeze.
        probe_eps, probe_steps, probe_step_size: the PGD of the adversarial set.
        probe_epochs, probe_bound, probe_lr, probe_batch_size: the per-layer gradient ascent (the batch size is also
            the chunk the adversarial set is crafted in).
        reset_optimizer_each_epoch: recreate the optimizer state every epoch, as the code does.
        head, head_hidden: must match stage 1.
        **kwargs: see `StudentModule` (optimizer adam, lr 1e-3, weight decay 8e-4 by default).
    """

    def __init__(
        self,
        model,
        fraction: float = 0.2,
        probe_eps: float = 8 / 255,
        probe_steps: int = 10,
        probe_step_size: float = 2 / 255,
        probe_epochs: int = 10,
        probe_bound: float = 0.1,
        probe_lr: float = 1.0,
        probe_batch_size: int = 512,
        reset_optimizer_each_epoch: bool = True,
        head: str = "mlp",
        head_hidden: int = 512,
        **kwargs,
    ):
        for key, value in (
            ("optimizer", "adam"),
            ("lr", 1e-3),
            ("weight_decay", 8e-4),
            ("scheduler", "none"),
            ("freeze_bn_stats", False),
        ):
            kwargs.setdefault(key, value)
        super().__init__(model, **kwargs)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        _set_head(self, head, head_hidden)
        self.fraction = fraction
        self.probe = {
            "eps": parse_eps(probe_eps),
            "steps": probe_steps,
            "step_size": parse_eps(probe_step_size),
            "epochs": probe_epochs,
            "bound": probe_bound,
            "lr": probe_lr,
            "batch_size": probe_batch_size,
        }
        self.reset_optimizer_each_epoch = reset_optimizer_each_epoch
        self.chosen_layers: list[str] = []

    def probed_layers(self) -> list[str]:
        """Names of the conv and linear modules whose weights are probed (the code skips names with "sub")."""
        return [n for n, m in self.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and "sub" not in n]

    def prepare_spec(self) -> dict:
        return {"probe": self.probe, "fraction": self.fraction, "layers": self.probed_layers()}

    @torch.no_grad()
    def _adv_loss(self, model: nn.Module, loader: DataLoader) -> float:
        device = next(model.parameters()).device
        total = sum(F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").item() for x, y in loader)
        return total / len(loader.dataset)

    def _adversarial_split(self, datamodule, attack, model, device) -> Pairs:
        """The target training split's adversarial copy, crafted `probe_batch_size` images at a time: the clean
        images are read per chunk (never all at once), the copy is written to a temporary file (`ImageFile`, the
        probe reads it for every layer and epoch) and read back a probe batch at a time."""
        x, y = datamodule.lazy_tensors("target", "train")
        # Reading the split whole through a DataLoader drew one number from the global generator (its base seed);
        # drawing it here keeps the probe's random start, so the prepared layers, as they were.
        torch.empty((), dtype=torch.int64).random_()
        chunk = self.probe["batch_size"]
        x_adv = ImageFile(x.shape if len(x) else (0,))
        for i in range(0, len(x), chunk):
            rows = torch.arange(i, min(i + chunk, len(x)))
            x_adv.write(i, attack(model, x[rows].to(device), y[rows].to(device)))
        return Pairs(LazyImages(x_adv), y)

    def prepare(self, datamodule) -> tuple[dict, dict[str, torch.Tensor]]:
        """The robustness-sensitivity probe: the loss increase each layer's worst bounded change can cause."""
        p = self.probe
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        attack = PGD(p["eps"], steps=p["steps"], step_size=p["step_size"], random_start=True, early_stop=False)
        model = self.model.to(device)
        loader = DataLoader(self._adversarial_split(datamodule, attack, model, device), p["batch_size"], shuffle=True)
        with attack_mode(model):
            origin = self._adv_loss(model, loader)
        sensitivity = {}
        for layer in self.probed_layers():
            probe = copy.deepcopy(model).eval()
            weight = probe.get_submodule(layer).weight
            for q in probe.parameters():
                q.requires_grad_(False)
            weight.requires_grad_(True)
            start = weight.detach().clone()
            opt = torch.optim.SGD([weight], lr=p["lr"])
            worst = 0.0
            for _ in range(p["epochs"]):
                for xb, yb in loader:
                    opt.zero_grad()
                    (-F.cross_entropy(probe(xb.to(device)), yb.to(device))).backward()
                    opt.step()
                with torch.no_grad():
                    diff = weight - start
                    ratio = diff.norm() / start.norm()
                    if ratio > p["bound"]:
                        weight.copy_(start + diff / ratio * p["bound"])
                worst = max(worst, self._adv_loss(probe, loader))
            sensitivity[layer] = worst - origin
        ranked = sorted(sensitivity, key=sensitivity.get)
        chosen = ranked[: max(1, int(len(ranked) * self.fraction))]
        meta = {"origin_adv_loss": origin, "sensitivity": sensitivity, "chosen_layers": chosen}
        self.model.cpu()
        return meta, {}

    def apply_preparation(self, meta: dict, tensors: dict) -> None:
        self.chosen_layers = list(meta["chosen_layers"])
        for name, q in self.model.named_parameters():
            q.requires_grad_(any(name.startswith(layer + ".") for layer in self.chosen_layers))

    def on_train_epoch_start(self) -> None:
        if self.reset_optimizer_each_epoch:
            for opt in self.trainer.optimizers:
                opt.state.clear()
