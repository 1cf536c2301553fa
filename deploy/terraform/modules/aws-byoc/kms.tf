data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_root = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
}

# The customer-managed key of the cold tier. Its policy names who may administer it and who may
# use it, and for what: the writer and Flink generate data keys (encrypt) and decrypt (needed for
# multipart uploads and for verifying what they wrote); the reader may only decrypt.
resource "aws_kms_key" "archive" {
  description             = "${var.name}: encryption of the usage archive (SSE-KMS and Parquet key wrapping)"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days
  key_usage               = "ENCRYPT_DECRYPT"
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = var.tags
}

resource "aws_kms_alias" "archive" {
  name          = var.kms_key_alias
  target_key_id = aws_kms_key.archive.key_id
}

# The column key of the archive's PII-bearing columns (customer and resource ids, labels,
# dimensions; assets/archive/encryption.py): a key of its own, so access to PII is granted apart
# from the rest. pyarrow wraps and unwraps its key-encryption keys with kms:Encrypt/kms:Decrypt;
# S3 never uses it. Flink has no access.
resource "aws_kms_key" "archive_pii" {
  description             = "${var.name}: encryption of the PII columns of the usage archive (Parquet key wrapping)"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days
  key_usage               = "ENCRYPT_DECRYPT"
  policy                  = data.aws_iam_policy_document.kms_pii.json
  tags                    = var.tags
}

resource "aws_kms_alias" "archive_pii" {
  name          = var.kms_pii_key_alias
  target_key_id = aws_kms_key.archive_pii.key_id
}

# Both keys: managed by the account through IAM and by the key administrators.
data "aws_iam_policy_document" "kms_admin" {
  # Without this the key could become unmanageable; it grants the account's IAM the right to
  # delegate, and only principals whose own policies allow kms:* actions can use it.
  statement {
    sid       = "AccountRootCanManageThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }

  statement {
    sid = "KeyAdministration"
    actions = [
      "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
      "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
      "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
      "kms:RotateKeyOnDemand",
    ]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = var.key_administrator_arns
    }
  }
}

data "aws_iam_policy_document" "kms" {
  source_policy_documents = [data.aws_iam_policy_document.kms_admin.json]

  statement {
    sid       = "EncryptAndVerify"
    actions   = ["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.archive_writer.arn, aws_iam_role.flink.arn]
    }
  }

  statement {
    sid       = "DecryptOnly"
    actions   = ["kms:Decrypt", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.archive_reader.arn]
    }
  }
}

data "aws_iam_policy_document" "kms_pii" {
  source_policy_documents = [data.aws_iam_policy_document.kms_admin.json]

  statement {
    sid       = "EncryptAndVerify"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.archive_writer.arn]
    }
  }

  statement {
    sid       = "DecryptOnly"
    actions   = ["kms:Decrypt", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.archive_reader.arn]
    }
  }
}
