output "archive_bucket" {
  description = "BYOC_S3__ARCHIVE_BUCKET, and the bucket of the FlinkDeployment's s3:// paths."
  value       = aws_s3_bucket.archive.bucket
}

output "kms_key_arn" {
  description = "ARN of the archive key."
  value       = aws_kms_key.archive.arn
}

output "kms_key_alias" {
  description = "BYOC_KMS__KEY_ALIAS."
  value       = aws_kms_alias.archive.name
}

output "kms_pii_key_arn" {
  description = "ARN of the archive's PII column key."
  value       = aws_kms_key.archive_pii.arn
}

output "kms_pii_key_alias" {
  description = "BYOC_KMS__PII_KEY_ALIAS."
  value       = aws_kms_alias.archive_pii.name
}

output "service_account_role_arns" {
  description = "eks.amazonaws.com/role-arn annotation per ServiceAccount name."
  value = {
    (var.service_accounts.archive_writer) = aws_iam_role.archive_writer.arn
    (var.service_accounts.archive_reader) = aws_iam_role.archive_reader.arn
    (var.service_accounts.flink)          = aws_iam_role.flink.arn
  }
}
