# IAM roles for Kubernetes ServiceAccounts (IRSA), least privilege:
#   archive_writer (Dagster run pods): write, verify and expire events/ (the archive and the
#                                      retention assets), encrypt + decrypt with both keys
#   archive_reader (restores, audits):  read events/, decrypt only
#   flink (JobManager/TaskManagers):    read/write flink/, encrypt + decrypt its own state
locals {
  oidc = var.oidc_provider_url
}

data "aws_iam_policy_document" "trust" {
  for_each = var.service_accounts
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "archive_writer" {
  name               = "${var.name}-archive-writer"
  assume_role_policy = data.aws_iam_policy_document.trust["archive_writer"].json
  tags               = var.tags
}

resource "aws_iam_role" "archive_reader" {
  name               = "${var.name}-archive-reader"
  assume_role_policy = data.aws_iam_policy_document.trust["archive_reader"].json
  tags               = var.tags
}

resource "aws_iam_role" "flink" {
  name               = "${var.name}-flink"
  assume_role_policy = data.aws_iam_policy_document.trust["flink"].json
  tags               = var.tags
}

data "aws_iam_policy_document" "archive_writer" {
  statement {
    sid       = "ListArchive"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.archive.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.archive_prefix}*"]
    }
  }
  # Put/Get/Head: archive and verify (assets/archive/hours.py); Delete: retention expires
  # archived days with DeleteObjects (assets/retention/policy.py; versioning keeps the
  # noncurrent versions for noncurrent_version_days).
  statement {
    sid       = "WriteVerifyAndExpireArchive"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.archive.arn}/${local.archive_prefix}*"]
  }
  # SSE-KMS of the objects (S3 asks for data keys in the caller's name) and the Parquet footer
  # and non-PII column keys (pyarrow wraps them with kms:Encrypt, unwraps with kms:Decrypt).
  statement {
    sid       = "EncryptWithArchiveKey"
    actions   = ["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]
    resources = [aws_kms_key.archive.arn]
  }
  # The PII column key: only wrapped and unwrapped by pyarrow (assets/archive/encryption.py).
  statement {
    sid       = "EncryptWithPiiKey"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]
    resources = [aws_kms_key.archive_pii.arn]
  }
}

data "aws_iam_policy_document" "archive_reader" {
  statement {
    sid       = "ListArchive"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.archive.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.archive_prefix}*"]
    }
  }
  statement {
    sid       = "ReadArchive"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.archive.arn}/${local.archive_prefix}*"]
  }
  # A restore decrypts every column: the footer/non-PII key and the PII key.
  statement {
    sid       = "DecryptWithArchiveKeys"
    actions   = ["kms:Decrypt", "kms:DescribeKey"]
    resources = [aws_kms_key.archive.arn, aws_kms_key.archive_pii.arn]
  }
}

data "aws_iam_policy_document" "flink" {
  statement {
    sid       = "ListFlinkState"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.archive.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["flink/*"]
    }
  }
  statement {
    sid       = "ReadWriteFlinkState"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.archive.arn}/flink/*"]
  }
  statement {
    sid       = "EncryptFlinkState"
    actions   = ["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]
    resources = [aws_kms_key.archive.arn]
  }
}

resource "aws_iam_role_policy" "archive_writer" {
  name   = "archive-writer"
  role   = aws_iam_role.archive_writer.id
  policy = data.aws_iam_policy_document.archive_writer.json
}

resource "aws_iam_role_policy" "archive_reader" {
  name   = "archive-reader"
  role   = aws_iam_role.archive_reader.id
  policy = data.aws_iam_policy_document.archive_reader.json
}

resource "aws_iam_role_policy" "flink" {
  name   = "flink"
  role   = aws_iam_role.flink.id
  policy = data.aws_iam_policy_document.flink.json
}
