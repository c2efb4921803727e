"""MAC: masked contrastive video-language pretraining. A plain ViT sees only the visible
patches of each frame (75% dropped in training), a small transformer sees the cached
text-tower states of a caption with some tokens dropped, and the two are aligned with
InfoNCE; no pixel is reconstructed. Steps are several times cheaper than unmasked ones.

``model.py`` the encoders and MAE-style masking, ``losses.py`` masked-then-align,
``data.py`` clips of the stored frames and the captions, ``train.py`` its task for the
shared loop, ``eval.py`` text<->video retrieval (MSR-VTT protocol) against baselines,
``serve.py`` the MLflow pyfunc, video embeddings and text->video search.
"""

from mmpipe.spec import SystemSpec
from mmpipe.systems.mac import eval as mac_eval
from mmpipe.systems.mac import serve, train

SPEC = SystemSpec(
    name="mac",
    registered_model=serve.REGISTERED_NAME,
    settings=train.MACSettings,
    primary_metric=mac_eval.PRIMARY_METRIC,
    higher_is_better=mac_eval.HIGHER_IS_BETTER,
    model_method=mac_eval.MODEL_NAME,
    baselines=mac_eval.BASELINES,
    train=train.train,
    register=serve.register,
    evaluate=mac_eval.evaluate,
    # Outside the default run (`make ablations`): what masking buys, against the same model
    # unmasked for as many steps and for the same wall-clock, and the mask-ratio sweep.
    sweeps=mac_eval.SWEEPS,
    evaluate_sweeps=mac_eval.evaluate_sweeps,
    description="MAC video and caption embeddings (masked contrastive pretraining), registered in MLflow as `mac`.",
    data_deps=("storage/validated", "storage/frames", "storage/features"),
    service=serve.VideoService,
)
