# Packer template: an Amazon Linux 2023 AMI with lmi-agent installed from its rpm and enabled.
#
#   packaging/build.sh --arch x86_64            # m7i, r7i
#   packer init packaging/ami && packer build -var arch=x86_64 packaging/ami
#   packaging/build.sh --arch aarch64           # Graviton c7g: cross-built on x86_64, or native on Graviton
#   packer build -var arch=aarch64 packaging/ami  # the arm64 AL2023 image, built on a c7g.large
#
# The base image is the newest AL2023 AMI of the architecture (source_ami_filter, owner amazon). AL2023 uses
# cgroup v2 with systemd, which is what the unit's Delegate= expects. The AMI starts the agent at boot.

packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "x86_64 (m7i, r7i) or aarch64 (Graviton c7g); must match the rpm."
  validation {
    condition     = contains(["x86_64", "aarch64"], var.arch)
    error_message = "The arch variable must be x86_64 or aarch64."
  }
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Build instance type; empty = m7i.large for x86_64, c7g.large for aarch64 (r7i.large also fits x86_64)."
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "version" {
  type        = string
  default     = "0.1.0"
  description = "lmi-agent version: the rpm is target/lmi-package/lmi-agent-<version>-1.<arch>.rpm."
}

variable "rpm_dir" {
  type    = string
  default = "target/lmi-package"
}

locals {
  # EC2 names the architectures x86_64 and arm64; rpm names them x86_64 and aarch64.
  ami_arch      = var.arch == "aarch64" ? "arm64" : "x86_64"
  instance_type = var.instance_type != "" ? var.instance_type : (var.arch == "aarch64" ? "c7g.large" : "m7i.large")
  rpm           = "${var.rpm_dir}/lmi-agent-${var.version}-1.${var.arch}.rpm"
  stamp         = formatdate("YYYYMMDDhhmmss", timestamp())
}

source "amazon-ebs" "al2023" {
  region        = var.region
  instance_type = local.instance_type
  ssh_username  = "ec2-user"
  ami_name      = "lmi-agent-${var.version}-al2023-${var.arch}-${local.stamp}"
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-${local.ami_arch}"
      architecture        = local.ami_arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  tags = {
    Name         = "lmi-agent ${var.version} (AL2023, ${var.arch})"
    lmi-agent    = var.version
    architecture = var.arch
  }
}

build {
  sources = ["source.amazon-ebs.al2023"]

  provisioner "file" {
    source      = local.rpm
    destination = "/tmp/lmi-agent.rpm"
  }

  provisioner "shell" {
    inline = [
      "set -eux",
      # Python runtimes of the catalog that AL2023 ships; a runtime whose interpreter is missing is reported unavailable.
      "sudo dnf install -y python3.11 python3.12",
      "sudo dnf install -y /tmp/lmi-agent.rpm",
      "rm -f /tmp/lmi-agent.rpm",
      "test -x /usr/bin/lmi-agent && test -x /usr/bin/lmictl",
      "test -f /usr/lib/systemd/system/lmi-agent.service",
      "test -f /usr/share/lmi-agent/runtime-shims/python/bootstrap.py",
      "sudo /usr/bin/lmi-agent check-config --config /etc/lmi-agent/agent.toml",
      "sudo systemctl daemon-reload",
      "sudo systemctl enable lmi-agent.service",
    ]
  }
}
