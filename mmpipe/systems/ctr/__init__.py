"""CTR ranking: a DIN-style model over the user's click history whose items carry a hashed
ID, one embedding table per semantic-ID level and the multimodal embedding with
zero-initialised residual codebooks, judged on cold items against an ID-only DIN.

``model.py`` the model, ``losses.py`` BCE, ``data.py`` impressions, histories and the item
table (read from storage: PinCLIP's or the behavior embeddings and the ``pin_semantic_ids``
files, never another system's code), ``train.py`` the shared loop, ``eval.py`` popularity,
the ablation ladder and the world's ceilings with bootstrap intervals, ``serve.py`` the
MLflow pyfunc.
"""

from mmpipe.spec import SystemSpec
from mmpipe.systems.ctr import eval as ctr_eval
from mmpipe.systems.ctr import serve, train

SPEC = SystemSpec(
    name="ctr",
    registered_model=serve.REGISTERED_NAME,
    settings=train.CTRSettings,
    primary_metric=ctr_eval.PRIMARY_METRIC,
    higher_is_better=ctr_eval.HIGHER_IS_BETTER,
    model_method=ctr_eval.MODEL_NAME,
    baselines=ctr_eval.GATE_BASELINES,
    train=train.train,
    register=serve.register,
    service=serve.CTRService,
    evaluate=ctr_eval.evaluate,
    ablations=ctr_eval.ABLATIONS,
    sweeps=ctr_eval.SWEEPS,
    evaluate_sweeps=ctr_eval.evaluate_sweeps,
    requirements=ctr_eval.REQUIREMENTS,
    description="DIN over click histories with hashed item IDs, per-level semantic-ID tables and the multimodal "
                "embedding plus zero-initialised residual codebooks, trained on the train window's impressions, "
                "registered in MLflow as `ctr`; gated on the validation window's cold-item AUC (above popularity, within "
                f"{ctr_eval.COLD_NON_INFERIORITY_MARGIN:g} of the ID-only DIN's), its overall AUC not below the "
                "ID-only DIN's.",
    data_deps=("storage/validated", "storage/embeddings", "storage/semantic_ids"),
)
