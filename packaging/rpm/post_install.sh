# Makes systemd see a new or changed unit ($1 = 1 on install, 2 on upgrade). Neither enabled nor started here:
# the AMI recipe enables it; on a running host restart it when it suits you (a restart drains every
# environment).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
