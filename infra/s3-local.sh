#!/usr/bin/env bash
# A local S3 API (moto's server) on 127.0.0.1 to try the s3:// store without a cloud account.
#
#   infra/s3-local.sh            # serves on 127.0.0.1:${S3_PORT:-9000}
#   export AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_DEFAULT_REGION=us-east-1
#   .venv/bin/python -c "import s3fs; s3fs.S3FileSystem().mkdir('my-bucket')"
#   .venv/bin/python -m flows.demo --store s3://my-bucket/curation
# With real S3, set only the credentials (or use an instance role) and leave AWS_ENDPOINT_URL unset.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/moto_server" -H 127.0.0.1 -p "${S3_PORT:-9000}"
