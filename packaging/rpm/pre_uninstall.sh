# On erase ($1 = 0), not on upgrade: stop (drain) and disable the service.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now lmi-agent.service >/dev/null 2>&1 || :
fi
