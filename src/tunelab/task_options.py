"""The ``task`` section of a recipe: one options class per task type, joined in a tagged union on ``type``.

As with strategies, a key that belongs to another task type (``packing`` on a classifier) is refused by name instead
of being ignored. Each class also says what the rest of tunelab needs to know about its task without importing it:
the data columns it reads (``column_roles``), and the metric that picks the best checkpoint by default.

Kept free of torch and of the task modules themselves, so that ``recipe.py`` can import it at the bottom layer.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    column_roles: ClassVar[list[str]] = []
    default_metric: ClassVar[tuple[str, Literal["max", "min"]]] = ("loss", "min")
    peft_task_type: ClassVar[str | None] = None  # peft's TaskType name; None: a plain module (peft's generic wrapper)
    inputs: ClassVar[Literal["tokens", "pixels"]] = "tokens"  # what the model reads (strategies that need tokens ask)
    evaluate_each_epoch: ClassVar[bool] = True  # also evaluate (and checkpoint) at every epoch's end, not only every
    # train.eval_every steps

    def ranking_metric(self) -> tuple[str, Literal["max", "min"]] | None:
        """The validation metric ``compare`` ranks variants of this task on when the recipe keeps the default
        eval.metric; None: that metric. (A VAE's loss weighs KL by beta, so variants of beta differ in what their
        loss measures; they are ranked on what the run is for.)"""
        return None


class HeadConfig(_TaskOptions):
    hidden: list[int] = Field(default_factory=list, description="Hidden sizes of extra head layers; [] = one linear layer.")
    activation: Literal["gelu", "relu", "tanh"] = "gelu"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class _TextOptions(_TaskOptions):
    max_length: int = Field(128, gt=0, description="Longest input in tokens.")
    truncation: bool = Field(False, description="Truncate over-long inputs (counted); if false they are an error.")


class ClassificationConfig(_TextOptions):
    """Text classification: a new head on a pretrained encoder (or decoder)."""

    column_roles: ClassVar[list[str]] = ["text", "label"]
    default_metric: ClassVar[tuple[str, Literal["max", "min"]]] = ("accuracy", "max")
    peft_task_type: ClassVar[str | None] = "SEQ_CLS"
    type: Literal["classification"] = "classification"
    head: HeadConfig = Field(default_factory=HeadConfig)


class _GenerationOptions(_TextOptions):
    prompt_template: str | None = Field(None, description="Build the prompt (causal_lm) or source (seq2seq) from the "
                                        "row's columns, e.g. 'Translate English to Spanish: {source}'.")


class CausalLMConfig(_GenerationOptions):
    """Decoder-only generation: chats or prompt/completion pairs."""

    column_roles: ClassVar[list[str]] = ["prompt", "completion", "messages"]
    peft_task_type: ClassVar[str | None] = "CAUSAL_LM"
    type: Literal["causal_lm"]
    system_prompt: str | None = Field(None, description="A system message put before every prompt (rows with their "
                                      "own system message keep it).")
    chat_template: bool = Field(True, description="Render with the tokenizer's chat template when it has one.")
    loss_on: Literal["answer", "all"] = Field("answer", description="Train on answer tokens only (prompt tokens "
                                              "masked with -100), or on every token.")
    packing: bool = Field(False, description="Pack a micro-batch's examples into shared rows, each one attending only "
                          "to itself (needs a model whose mask follows position ids).")


class Seq2SeqConfig(_GenerationOptions):
    """Encoder-decoder generation: source -> target (translation, summaries)."""

    column_roles: ClassVar[list[str]] = ["source", "target"]
    peft_task_type: ClassVar[str | None] = "SEQ_2_SEQ_LM"
    type: Literal["seq2seq"]
    max_target_length: int | None = Field(None, gt=0, description="Longest target in tokens (default max_length).")


class ImageClassificationConfig(_TaskOptions):
    """Image classification: a new head on a pretrained CNN or vision transformer (timm)."""

    column_roles: ClassVar[list[str]] = ["image", "label"]
    default_metric: ClassVar[tuple[str, Literal["max", "min"]]] = ("accuracy", "max")
    inputs: ClassVar[Literal["tokens", "pixels"]] = "pixels"
    type: Literal["image_classification"]
    pretrained: bool = Field(True, description="Start from the pretrained weights; false trains the same "
                             "architecture from random initialisation (the 'from scratch' baseline).")
    image_size: int | None = Field(None, gt=7, description="Side of the square input in pixels (default: the "
                                   "backbone's own, e.g. 224).")
    augment: bool = Field(True, description="Random resized crop and horizontal flip on training images (off for "
                          "cached features, which are computed once from the plain images).")
    hflip: bool = Field(True, description="Flip training images horizontally; turn off where a mirror image means "
                        "something else (digits, text).")
    scale: tuple[float, float] = Field((0.5, 1.0), description="Area range of the random resized crop.")
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the classifier.")


class _VectorOptions(_TaskOptions):
    """What a generative task reads: one vector of numbers per row (see tasks/vectors.py)."""

    column_roles: ClassVar[list[str]] = ["text", "image", "label"]
    input: Literal["table", "image", "text"] = Field("table", description="What a row holds: numeric columns "
                                                     "(table), an image (image), or text encoded by model.name (text).")
    columns: list[str] | None = Field(None, description="Table input: the numeric columns to model (default: every "
                                      "column of the training rows except the label).")
    image_size: int = Field(28, gt=0, description="Image input: side in pixels that images are resized to.")
    grayscale: bool = Field(True, description="Image input: one grey channel (false: RGB).")
    max_length: int = Field(128, gt=0, description="Text input: longest text in encoder tokens.")
    truncation: bool = Field(False, description="Text input: truncate over-long texts (counted); if false they are "
                             "an error.")


class VAEConfig(_VectorOptions):
    """A variational autoencoder that learns what normal rows look like: anomaly scores, synthetic rows and images.

    Its input is a numeric table (model.name: none), small images (model.name: none) or the mean-pooled features of
    a pretrained text encoder (model.name: minilm-l6). Every parameter trains from scratch (strategy full).
    """

    type: Literal["vae"]
    normal: list[str] | None = Field(None, description="Label values of normal rows; the others are anomalies. Set "
                                     "it to score anomaly detection (ROC-AUC, PR-AUC, F1) on validation and test; "
                                     "training rows must all be normal.")
    latent: int = Field(8, gt=0, description="Size of the latent code z.")
    hidden: list[int] = Field(default_factory=lambda: [128, 64], description="Hidden layer sizes of the encoder "
                              "(the decoder mirrors them).")
    reconstruction: Literal["mse", "gaussian", "bce"] | None = Field(
        None, description="Likelihood of the data: mse (Gaussian with unit variance on standardised inputs), gaussian "
        "(a variance per input, learned) or bce (Bernoulli, inputs in [0, 1]); default bce for images, gaussian "
        "otherwise (a higher validation ELBO than mse on breast-cancer and on MiniLM features of Rotten Tomatoes).")
    beta: float = Field(1.0, ge=0.0, description="Weight of the KL term (1 = the ELBO; below 1 reconstructs "
                        "better, above 1 gives a smoother latent space).")
    kl_warmup_epochs: float = Field(0.0, ge=0.0, description="Raise the KL weight linearly from 0 to beta over "
                                    "this many epochs of training examples (0 = no warm-up).")
    score: Literal["elbo", "reconstruction"] = Field("elbo", description="Anomaly score: the negative ELBO, or "
                                                     "the reconstruction error alone.")
    threshold_quantile: float = Field(0.99, gt=0.0, lt=1.0, description="Flag threshold when validation holds no "
                                      "anomalies: this quantile of the validation scores (with anomalies: the "
                                      "threshold of best validation F1).")
    eval_samples: int = Field(8, gt=0, description="Latent samples per example when evaluating and scoring (a "
                              "fixed seed, so scores repeat).")

    def ranking_metric(self) -> tuple[str, Literal["max", "min"]]:
        """ROC-AUC when it detects anomalies; else the ELBO (beta = 1 for every variant, unlike the loss)."""
        return ("roc_auc", "max") if self.normal else ("elbo", "max")


class NetworkOptimizer(BaseModel):
    """AdamW for one of a GAN's two networks."""

    model_config = ConfigDict(extra="forbid")
    lr: float | None = Field(None, gt=0, description="Peak learning rate (default: train.lr).")
    betas: tuple[float, float] = Field((0.5, 0.999), description="AdamW betas; beta1 0.5 as in DCGAN (Radford et "
                                       "al. 2016): a momentum of 0.9 oscillates against a moving opponent.")
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["linear", "cosine", "step", "constant"] | None = Field(
        None, description="Its schedule (default: train.schedule, with train's warm-up).")


class GANConfig(_VectorOptions):
    """A generative adversarial network: a generator against a discriminator, each with its own optimiser, for
    synthetic rows and images. Judged by what the data is for (train-on-synthetic-test-on-real, a detection score,
    nearest real rows), not by its losses. Every parameter trains from scratch (strategy full)."""

    default_metric: ClassVar[tuple[str, Literal["max", "min"]]] = ("detection", "min")
    evaluate_each_epoch: ClassVar[bool] = False  # epochs of a small table are a few dozen steps, and judging samples
    # (random forests) costs seconds: a GAN evaluates every train.eval_every steps and at the end
    type: Literal["gan"]
    noise: int = Field(32, gt=0, description="Size of the generator's noise input z.")
    architecture: Literal["mlp", "conv"] = Field("mlp", description="mlp for every input; conv (a DCGAN-style pair "
                                                 "of strided convolutions) for images whose side divides by 4.")
    generator_hidden: list[int] = Field(default_factory=lambda: [128, 128], description="Hidden layer sizes of "
                                        "the generator (mlp), or [channels] of its first feature map (conv).")
    discriminator_hidden: list[int] = Field(default_factory=lambda: [128, 128], description="Hidden layer sizes of "
                                            "the discriminator (mlp), or [channels] of its last feature map (conv).")
    conditional: bool = Field(False, description="Condition both networks on the row's label (data.columns.label): "
                              "samples come with a class, so a classifier can be trained on them (TSTR).")
    loss: Literal["non_saturating", "hinge"] = Field("non_saturating", description="non_saturating: the "
                                                     "discriminator's cross-entropy, the generator maximising log "
                                                     "D(G(z)); hinge: the margin loss of SN-GAN/BigGAN.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="One-sided: the discriminator's target for "
                                   "real rows is 1 - this (non_saturating only; Salimans et al. 2016).")
    d_steps: int = Field(1, ge=1, description="Discriminator updates per generator update (n_critic): the "
                         "discriminator updates on every batch, the generator on every d_steps-th.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout in the discriminator's hidden layers.")
    generator: NetworkOptimizer = Field(default_factory=NetworkOptimizer)
    discriminator: NetworkOptimizer = Field(default_factory=NetworkOptimizer)
    eval_samples: int | None = Field(None, gt=0, description="Synthetic rows drawn per evaluation (default: as "
                                     "many as the split evaluated, with its labels when conditional).")


TASK_CONFIGS: dict[str, type[_TaskOptions]] = {
    "classification": ClassificationConfig, "causal_lm": CausalLMConfig, "seq2seq": Seq2SeqConfig,
    "image_classification": ImageClassificationConfig, "vae": VAEConfig, "gan": GANConfig,
}

TaskConfig = Annotated[
    Union[ClassificationConfig, CausalLMConfig, Seq2SeqConfig, ImageClassificationConfig, VAEConfig, GANConfig],
    Field(discriminator="type"),
]


def fields_of_task(task_type: str) -> list[str]:
    """Valid option names of one task type, for did-you-mean messages."""
    cls = TASK_CONFIGS.get(task_type)
    return list(cls.model_fields) if cls else []
