variable "name" {
  description = "Prefix of every resource name (e.g. byoc-prod)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes."
  }
}

variable "archive_bucket_name" {
  description = "Globally unique name of the archive bucket (cold tier, Flink checkpoints/HA)."
  type        = string
}

variable "kms_key_alias" {
  description = "Alias of the customer-managed key; must match BYOC_KMS__KEY_ALIAS."
  type        = string
  default     = "alias/byoc-archive"
  validation {
    condition     = startswith(var.kms_key_alias, "alias/")
    error_message = "kms_key_alias must start with alias/."
  }
}

variable "kms_pii_key_alias" {
  description = "Alias of the customer-managed key of the archive's PII columns; must match BYOC_KMS__PII_KEY_ALIAS."
  type        = string
  default     = "alias/byoc-archive-pii"
  validation {
    condition     = startswith(var.kms_pii_key_alias, "alias/")
    error_message = "kms_pii_key_alias must start with alias/."
  }
}

variable "key_administrator_arns" {
  description = "IAM principals allowed to administer (not use) the KMS key."
  type        = list(string)
}

variable "kms_deletion_window_days" {
  description = "Waiting period before a scheduled key deletion takes effect."
  type        = number
  default     = 30
}

variable "archive_days" {
  description = "Days an archived object is kept (retention policy; BYOC_RETENTION__ARCHIVE_DAYS)."
  type        = number
  default     = 400
  validation {
    condition     = var.archive_days >= 1
    error_message = "archive_days must be at least 1."
  }
}

variable "archive_transition_days" {
  description = "Days after which archives move to Glacier Instant Retrieval (null: never)."
  type        = number
  default     = 90
  nullable    = true
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept (undo window)."
  type        = number
  default     = 30
}

variable "flink_checkpoint_days" {
  description = "Days Flink checkpoint files are kept (the job retains the latest few itself)."
  type        = number
  default     = 14
}

variable "access_log_bucket" {
  description = "Existing bucket that receives S3 server access logs (null: logging off)."
  type        = string
  default     = null
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (IRSA)."
  type        = string
}

variable "oidc_provider_url" {
  description = "Issuer URL of the EKS cluster's OIDC provider, without https://."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the byoc workloads."
  type        = string
  default     = "byoc"
}

variable "service_accounts" {
  description = "Kubernetes ServiceAccount names bound to the IAM roles."
  type = object({
    archive_writer = string
    archive_reader = string
    flink          = string
  })
  default = {
    archive_writer = "byoc-dagster-run"
    archive_reader = "byoc-archive-reader"
    flink          = "byoc-flink"
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
