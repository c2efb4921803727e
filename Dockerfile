# The image a team deploys on Kubernetes (MMPIPE_MODE=k8s, deploy/k8s/values.yaml): the project at
# the versions of constraints.txt, dagster-k8s, and the code location served over gRPC. Not built in CI.
#   docker build -t registry.example.com/mmpipe:$(git rev-parse --short HEAD) .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MMPIPE_MODE=k8s GX_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    MMPIPE_ROOT=/opt/mmpipe DAGSTER_HOME=/opt/dagster/dagster_home
# git: MLflow runs record the commit (mmpipe.registry.mlflow_registry.git_commit)
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/mmpipe

COPY pyproject.toml constraints.txt params.yaml dvc.yaml data.dvc ./
COPY deploy deploy
COPY mmpipe mmpipe
COPY orchestration orchestration
# The Makefile's order: the CPU torch wheel, the pinned set, Dagster's antlr, then the Dagster
# libraries without their `dagster==` pin (no 0.29.x release matches dagster 1.13.28; see the
# Makefile), and dagster-k8s's own dependencies. Editable, as `make setup`: the checkout is the
# project root (params.yaml, deploy/).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -c constraints.txt -e . \
 && pip install antlr4-python3-runtime==4.13.2 \
 && pip install --no-deps -c constraints.txt dagster-postgres dagster-celery \
 && pip install --no-deps dagster-k8s==0.29.27 \
 && pip install -c constraints.txt "kubernetes<37" "google-auth!=2.23.1" \
 && mkdir -p "$DAGSTER_HOME"

# The Helm chart's user deployment runs `dagster api grpc` with dagsterApiGrpcArgs; the same image
# runs every run and step pod (k8s_job_executor).
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "orchestration.definitions"]
