#!/bin/bash
# llmjax on a Cloud TPU VM slice: the same `llmjax train` on every worker over gcloud ssh.
#
#   TPU_NAME=my-tpu ZONE=us-central2-b WORKDIR=/mnt/shared/runs/q1 \
#     experiments/launch/tpu_vm.sh setup                        # once: copy the repo, install
#   TPU_NAME=my-tpu ZONE=us-central2-b WORKDIR=/mnt/shared/runs/q1 \
#     experiments/launch/tpu_vm.sh train --gin.TRAIN_STEPS=2000 # every worker trains
#
# Run from the repo root. Arguments after `train` go to `llmjax train` on every worker, so all
# workers get the same gin files and bindings. No coordinator/process flags: called with no
# arguments, jax.distributed.initialize() finds the workers and this worker's id from the TPU
# metadata server. --distributed=on asks llmjax to make that call even where its own check
# for a multi-worker slice (TPU_WORKER_HOSTNAMES) finds nothing; on a one-worker TPU VM it
# initializes a run of one process.
#
# WORKDIR must be one directory every worker sees at the same path: a Filestore/NFS mount, or a
# GCS bucket mounted with gcsfuse (llmjax opens the workdir with local file APIs, so pass the
# mount point, not a gs:// URL). A worker-local path would give each worker its own checkpoints.
set -euo pipefail

TPU_NAME="${TPU_NAME:?set TPU_NAME to the TPU VM name}"
ZONE="${ZONE:?set ZONE to the TPU VM zone}"
GIN_FILE="${GIN_FILE:-gin_configs/runs/quickstart.gin}"
# The checkout on every worker, relative to the remote home directory.
REMOTE_DIR="${REMOTE_DIR:-llmjax}"
# llmjax needs Python 3.11+; set PYTHON=python3.11 if the image's python3 is older.
PYTHON="${PYTHON:-python3}"
ACTION="${1:-}"
shift || true

tpu_ssh() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="$1"
}

case "${ACTION}" in
  setup)
    # Ships the committed tree (git archive HEAD): commit or stash edits first.
    archive="$(mktemp -d)/llmjax.tar.gz"
    git archive --format=tar.gz -o "${archive}" HEAD
    gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:" --zone="${ZONE}" --worker=all
    tpu_ssh "mkdir -p ${REMOTE_DIR} && tar -xzf llmjax.tar.gz -C ${REMOTE_DIR} \
&& ${PYTHON} -m venv ${REMOTE_DIR}/.venv \
&& ${REMOTE_DIR}/.venv/bin/pip install -U 'jax[tpu]' -e ${REMOTE_DIR}"
    ;;
  train)
    WORKDIR="${WORKDIR:?set WORKDIR to a directory every worker sees (see the header)}"
    # Quote the pass-through flags once more: the remote shell parses the command again.
    extra_args=""
    if (($#)); then
      extra_args="$(printf ' %q' "$@")"
    fi
    tpu_ssh "cd ${REMOTE_DIR} && . .venv/bin/activate \
&& llmjax train --gin_file=${GIN_FILE} --workdir=${WORKDIR} --distributed=on${extra_args}"
    ;;
  *)
    echo "usage: $0 setup | train [--gin.NAME=VALUE ...]" >&2
    exit 2
    ;;
esac
