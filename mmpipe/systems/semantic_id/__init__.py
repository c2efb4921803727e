"""Semantic IDs: a behavior-aware item encoder on PinCLIP's fused pin embedding (InfoNCE on
co-engagement pairs) and an RQ-VAE codebook that names each pin by L codes of K, the bridge
from the multimodal space to a ranking model's per-level ID tables.

``model.py`` the encoder, the residual quantizer and the RQ-VAE, ``losses.py`` InfoNCE and
the RQ-VAE loss, ``data.py`` the fused embeddings, date windows and co-engagement pairs,
``train.py`` both phases on the shared loop, ``eval.py`` the codebook against untrained
residual quantizers and the encoder against raw PinCLIP, ``serve.py`` the MLflow pyfunc and
the champion's daily behavior embeddings and semantic IDs.
"""

from mmpipe.spec import SystemSpec
from mmpipe.systems.semantic_id import eval as semantic_id_eval
from mmpipe.systems.semantic_id import serve, train

SPEC = SystemSpec(
    name="semantic_id",
    registered_model=serve.REGISTERED_NAME,
    settings=train.SemanticIDSettings,
    primary_metric=semantic_id_eval.PRIMARY_METRIC,
    higher_is_better=semantic_id_eval.HIGHER_IS_BETTER,
    model_method=semantic_id_eval.MODEL_NAME,
    baselines=semantic_id_eval.GATE_BASELINES,
    train=train.train,
    register=serve.register,
    evaluate=semantic_id_eval.evaluate,
    requirements=semantic_id_eval.REQUIREMENTS,
    # The name for the model asset: what it registers is the codebook (with the
    # encoder it quantizes).
    model_asset_name="semantic_id_codebook",
    description="The behavior-aware item encoder and the RQ-VAE semantic-ID codebook over it, trained on "
                "PinCLIP's stored fused pin embeddings and train-window co-engagement, registered in MLflow as "
                "`semantic_id`; promoted only when every level uses >= 90% of its codes on the validation window "
                f"and its reconstruction is within {semantic_id_eval.NON_INFERIORITY_MARGIN:g} cosine of residual "
                "k-means's.",
    data_deps=("storage/validated", "storage/embeddings/pins"),
)
