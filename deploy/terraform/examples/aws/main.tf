# Example root module: the archive bucket, KMS key and IRSA roles for one environment.
#   terraform init && terraform plan -var-file=prod.tfvars
terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  description = "AWS region of the customer's cluster."
  type        = string
  default     = "us-east-1"
}

variable "eks_cluster_name" {
  description = "Name of the EKS cluster the byoc workloads run in."
  type        = string
}

variable "key_administrator_arns" {
  description = "IAM principals that administer the KMS key."
  type        = list(string)
}

data "aws_eks_cluster" "this" {
  name = var.eks_cluster_name
}

data "aws_iam_openid_connect_provider" "this" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

module "byoc" {
  source = "../../modules/aws-byoc"

  name                   = "byoc-prod"
  archive_bucket_name    = "byoc-archive-prod"
  key_administrator_arns = var.key_administrator_arns
  oidc_provider_arn      = data.aws_iam_openid_connect_provider.this.arn
  oidc_provider_url      = replace(data.aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
  archive_days           = 400
  tags = {
    "app.kubernetes.io/part-of" = "byoc-platform"
  }
}

output "byoc" {
  description = "Values for the kustomize overlay (bucket, key alias, ServiceAccount role ARNs)."
  value = {
    archive_bucket            = module.byoc.archive_bucket
    kms_key_alias             = module.byoc.kms_key_alias
    kms_pii_key_alias         = module.byoc.kms_pii_key_alias
    service_account_role_arns = module.byoc.service_account_role_arns
  }
}
