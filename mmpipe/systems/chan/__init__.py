"""CHAN: query-focused video summarization. Each shot of a video is scored for its relevance
to a query of one or two concepts ("red, striped") by a convolutional hierarchical
attention network over the shared shot features (1-D convolutions, pooling and local
self-attention per segment of shots, query-aware global attention across segments,
upsampling back to shots); a summary keeps the best-scored shots under a length budget.

``model.py`` the network, ``losses.py`` per-shot BCE, ``data.py`` the annotated shots with
their features, the queries and windows, ``train.py`` its task for the shared loop,
``eval.py`` the QFVS protocol against baselines and the ceiling, ``serve.py`` the MLflow
pyfunc, the held-out summaries and ``mmpipe summarize``.
"""

from mmpipe.spec import SystemSpec
from mmpipe.systems.chan import eval as chan_eval
from mmpipe.systems.chan import serve, train

SPEC = SystemSpec(
    name="chan",
    registered_model=serve.REGISTERED_NAME,
    settings=train.CHANSettings,
    primary_metric=chan_eval.PRIMARY_METRIC,
    higher_is_better=chan_eval.HIGHER_IS_BETTER,
    model_method=chan_eval.MODEL_NAME,
    baselines=chan_eval.BASELINES,
    train=train.train,
    register=serve.register,
    evaluate=chan_eval.evaluate,
    # Outside the default run (`make ablations`): what each attention is worth.
    sweeps=chan_eval.SWEEPS,
    evaluate_sweeps=chan_eval.evaluate_sweeps,
    description="CHAN shot relevance to a query (query-focused summaries), registered in MLflow as `chan`.",
    data_deps=("storage/validated", "storage/features"),
    service=serve.SummaryService,
)
