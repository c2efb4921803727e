"""Moment retrieval: where in a video a query happens. A cross-interaction network over the
shared frame features (the image encoder's embedding of each stored frame) and the text
tower's states of the query: early fusion, self-attention over each, two-way
cross-attention, and a multi-task objective (per-frame moment segmentation, start/end
distributions, start/end regression); the best start x end span, refined by regression.

``model.py`` the network and its decoding into spans, ``losses.py`` its objective,
``data.py`` frames, queries and per-frame labels, ``train.py`` its task for the shared
loop, ``eval.py`` the protocol (R1/R5@IoU, mIoU, MR-mAP through the standalone evaluator
``mmpipe.eval.moment``) against baselines, ``serve.py`` the MLflow pyfunc, the held-out
predictions as QVHighlights-style JSONL and ``mmpipe moment``.
"""

from mmpipe.spec import SystemSpec
from mmpipe.systems.moment import eval as moment_eval
from mmpipe.systems.moment import serve, train

SPEC = SystemSpec(
    name="moment",
    registered_model=serve.REGISTERED_NAME,
    settings=train.MomentSettings,
    primary_metric=moment_eval.PRIMARY_METRIC,
    higher_is_better=moment_eval.HIGHER_IS_BETTER,
    model_method=moment_eval.MODEL_NAME,
    baselines=moment_eval.BASELINES,
    train=train.train,
    register=serve.register,
    evaluate=moment_eval.evaluate,
    # Outside the default run (`make ablations`): what each head and early fusion are worth.
    sweeps=moment_eval.SWEEPS,
    evaluate_sweeps=moment_eval.evaluate_sweeps,
    description="The moment retrieval model (query + frame features -> ranked spans), registered in MLflow "
                "as `moment`.",
    data_deps=("storage/validated", "storage/features/frames", "storage/features/video_text.safetensors"),
    service=serve.MomentService,
)
