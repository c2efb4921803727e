"""PinCLIP: image-text alignment with a hybrid ViT image tower, a pretrained text tower and
fusion heads, plus neighbor alignment over the pin-board graph (helps cold pins).

``model.py`` the network, ``losses.py`` its objective, ``data.py`` pins, captions and
neighbor pairs, ``train.py`` its task for the shared loop, ``eval.py`` its protocol against
baselines and the ceiling, ``serve.py`` the MLflow pyfunc, embeddings and search.
"""

from mmpipe.spec import SystemSpec
from mmpipe.systems.pinclip import eval as pinclip_eval
from mmpipe.systems.pinclip import serve, train

SPEC = SystemSpec(
    name="pinclip",
    registered_model=serve.REGISTERED_NAME,
    settings=train.PinCLIPSettings,
    primary_metric=pinclip_eval.PRIMARY_METRIC,
    higher_is_better=pinclip_eval.HIGHER_IS_BETTER,
    model_method=pinclip_eval.MODEL_NAME,
    baselines=pinclip_eval.BASELINES,
    train=train.train,
    register=serve.register,
    evaluate=pinclip_eval.evaluate,
    ablations={"no_neighbor": {"train": {"neighbor_weight": 0.0}}},
    # Outside the default run (`make ablations`): what each part of the recipe is worth.
    sweeps={"one_fusion_head": {"model": {"n_fusion_heads": 1}},
            "no_text_neighbor": {"train": {"text_neighbor_weight": 0.0}}},
    evaluate_sweeps=pinclip_eval.evaluate_sweeps,
    description="PinCLIP pin embeddings (image, text, fused), registered in MLflow as `pinclip`.",
    data_deps=("storage/validated", "storage/graph", "storage/features/pin_text.safetensors"),
    service=serve.PinService,
)
