# The archive bucket: cold-tier Parquet and manifests (events/), Flink checkpoints, savepoints and
# HA metadata (flink/). Default encryption SSE-KMS under the customer key; versioning; lifecycle
# from the retention policy; no public access; TLS only.
locals {
  # Where the archive writes and retention lists and deletes: assets/archive/hours.py PREFIX.
  archive_prefix = "events/"
}

resource "aws_s3_bucket" "archive" {
  bucket = var.archive_bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_ownership_controls" "archive" {
  bucket = aws_s3_bucket.archive.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "archive" {
  bucket                  = aws_s3_bucket.archive.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "archive" {
  bucket = aws_s3_bucket.archive.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "archive" {
  bucket = aws_s3_bucket.archive.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.archive.arn
    }
    # S3 Bucket Keys cut KMS requests (and cost) by ~99% for many small objects.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "archive" {
  bucket = aws_s3_bucket.archive.id
  # Versioning must be on before noncurrent-version rules apply.
  depends_on = [aws_s3_bucket_versioning.archive]

  rule {
    id     = "archive-retention"
    status = "Enabled"
    filter {
      prefix = local.archive_prefix
    }
    dynamic "transition" {
      for_each = var.archive_transition_days == null ? [] : [var.archive_transition_days]
      content {
        days          = transition.value
        storage_class = "GLACIER_IR"
      }
    }
    expiration {
      days = var.archive_days
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
  }

  rule {
    id     = "flink-checkpoints"
    status = "Enabled"
    filter {
      prefix = "flink/checkpoints/"
    }
    expiration {
      days = var.flink_checkpoint_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    expiration {
      expired_object_delete_marker = true
    }
  }
}

resource "aws_s3_bucket_logging" "archive" {
  count         = var.access_log_bucket == null ? 0 : 1
  bucket        = aws_s3_bucket.archive.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/${var.archive_bucket_name}/"
}

resource "aws_s3_bucket_policy" "archive" {
  bucket = aws_s3_bucket.archive.id
  policy = data.aws_iam_policy_document.bucket.json
  # Public-access block first, so the policy is never briefly evaluated without it.
  depends_on = [aws_s3_bucket_public_access_block.archive]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.archive.arn,
      "${aws_s3_bucket.archive.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # An upload that asks for another encryption than SSE-KMS, or another key, is refused.
  statement {
    sid       = "DenyOtherEncryption"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.archive.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }

  statement {
    sid       = "DenyOtherKmsKey"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.archive.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    # The header holds what the client sent: the archive names the key by its alias
    # (BYOC_KMS__KEY_ALIAS, assets/archive/hours.py SSEKMSKeyId), others may send an ARN.
    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values = [
        aws_kms_key.archive.arn,
        aws_kms_alias.archive.name,
        aws_kms_alias.archive.arn,
      ]
    }
  }
}
