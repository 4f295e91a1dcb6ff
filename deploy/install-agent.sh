#!/bin/sh
# Installs the CLADNet agent on a VM: binary, configuration, join token and systemd unit, then
# starts it. Run as root from a release tree (the binary next to this script, or --binary).
#
#   install-agent.sh --controller https://ctl.example:8053 --network prod \
#       --join-token-file ./join.token [--provider aws --region R --zone Z --vpc V --subnet S]
#
# With a `--tls auto` controller the join token carries the controller's pin: nothing else is
# needed to trust it. An http:// controller sends the token in clear (a warning is printed).
#
# Options:
#   --controller URL       controller endpoint; repeat for failover (required)
#   --network ID           network to join (required)
#   --join-token TOKEN     join token (prefer --join-token-file: arguments are visible to others)
#   --join-token-file F    file holding the join token
#   --ca-cert F            CA certificate (PEM) of an https:// controller whose token has no pin
#   --controller-pin PIN   pin (sha256:<hex>) of the controller's key, for a token without one
#   --provider/--region/--zone/--vpc/--subnet   site labels (see docs/agent.md)
#   --binary PATH          the cladnet-agent binary (default: next to this script)
#   --prefix DIR           install under DIR instead of / (packaging, tests)
#   --force                replace an existing configuration
#   --no-start             install only; do not enable or start the service
set -eu

die() { echo "install-agent: $*" >&2; exit 2; }
quote() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

here=$(cd "$(dirname "$0")" && pwd)
controllers="" network="" token="" token_file="" binary="$here/cladnet-agent" prefix=""
ca_cert="" pin="" plain=""
provider="" region="" zone="" vpc="" subnet="" force=0 start=1
while [ $# -gt 0 ]; do
    case "$1" in
        --controller) [ $# -ge 2 ] || die "--controller needs a URL"
            case "$2" in https://*) ;; http://*) plain="$2" ;; *) die "--controller: $2 is not an http(s):// URL" ;; esac
            controllers="${controllers:+$controllers, }$(quote "$2")"; shift 2 ;;
        --network) [ $# -ge 2 ] || die "--network needs an id"; network="$2"; shift 2 ;;
        --join-token) [ $# -ge 2 ] || die "--join-token needs a token"; token="$2"; shift 2 ;;
        --join-token-file) [ $# -ge 2 ] || die "--join-token-file needs a path"; token_file="$2"; shift 2 ;;
        --ca-cert) [ $# -ge 2 ] || die "--ca-cert needs a path"; ca_cert="$2"; shift 2 ;;
        --controller-pin) [ $# -ge 2 ] || die "--controller-pin needs a pin"; pin="$2"; shift 2 ;;
        --provider) provider="${2:?--provider needs a value}"; shift 2 ;;
        --region) region="${2:?--region needs a value}"; shift 2 ;;
        --zone) zone="${2:?--zone needs a value}"; shift 2 ;;
        --vpc) vpc="${2:?--vpc needs a value}"; shift 2 ;;
        --subnet) subnet="${2:?--subnet needs a value}"; shift 2 ;;
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --prefix) prefix="${2:?--prefix needs a directory}"; prefix="${prefix%/}"; shift 2 ;;
        --force) force=1; shift ;;
        --no-start) start=0; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[ -n "$controllers" ] || die "--controller is required"
[ -n "$network" ] || die "--network is required"
case "$network" in *[!a-z0-9-]*|"") die "--network: $network is not a network id ([a-z0-9-])" ;; esac
if [ -n "$token_file" ]; then
    [ -r "$token_file" ] || die "--join-token-file: cannot read $token_file"
    token=$(tr -d ' \t\r\n' < "$token_file")
fi
[ -n "$token" ] || die "a join token is required (--join-token-file or --join-token)"
if [ -n "$ca_cert" ]; then [ -r "$ca_cert" ] || die "--ca-cert: cannot read $ca_cert"; fi
if [ -n "$plain" ]; then
    echo "install-agent: warning: $plain is plain HTTP: the join token and session travel in clear; serve the controller with --tls auto and use https://" >&2
fi
[ -x "$binary" ] || die "--binary: $binary is not an executable cladnet-agent"

etc="$prefix/etc/cladnet"
config="$etc/agent.toml"
if [ -e "$config" ] && [ "$force" -eq 0 ]; then
    die "$config exists; use --force to replace it"
fi
umask 077
mkdir -p "$prefix/usr/local/bin" "$etc" "$prefix/etc/systemd/system" "$prefix/var/lib/cladnet-agent"
chmod 700 "$prefix/var/lib/cladnet-agent"
install -m 0755 "$binary" "$prefix/usr/local/bin/cladnet-agent"
# Written to temporary files and moved into place: a failed install leaves no half-written file.
printf '%s\n' "$token" > "$etc/.join.token.new" && chmod 600 "$etc/.join.token.new"
mv "$etc/.join.token.new" "$etc/join.token"
trust=""
if [ -n "$ca_cert" ]; then
    install -m 0644 "$ca_cert" "$etc/ca.crt"
    trust="ca_cert = $(quote "$prefix/etc/cladnet/ca.crt")"
fi
if [ -n "$pin" ]; then
    trust="${trust:+$trust
}controller_pin = $(quote "$pin")"
fi
cat > "$etc/.agent.toml.new" <<TOML
# Written by install-agent.sh; see docs/agent.md for every option.
controllers = [$controllers]
network = $(quote "$network")
join_token_file = $(quote "$prefix/etc/cladnet/join.token")
data_dir = $(quote "$prefix/var/lib/cladnet-agent")
$trust

[site]
provider = $(quote "$provider")
region = $(quote "$region")
zone = $(quote "$zone")
vpc = $(quote "$vpc")
subnet = $(quote "$subnet")
TOML
chmod 600 "$etc/.agent.toml.new"
# Refuse a configuration the agent itself would refuse.
"$prefix/usr/local/bin/cladnet-agent" check-config --config "$etc/.agent.toml.new" > /dev/null \
    || { rm -f "$etc/.agent.toml.new"; die "the generated configuration was refused (above)"; }
mv "$etc/.agent.toml.new" "$config"
install -m 0644 "$here/systemd/cladnet-agent.service" "$prefix/etc/systemd/system/cladnet-agent.service" 2>/dev/null \
    || install -m 0644 "$here/cladnet-agent.service" "$prefix/etc/systemd/system/cladnet-agent.service"
echo "installed: $prefix/usr/local/bin/cladnet-agent, $config, $etc/join.token, cladnet-agent.service"
if [ "$start" -eq 1 ]; then
    systemctl daemon-reload
    systemctl enable --now cladnet-agent.service
    echo "started; check with: cladnet-agent status   (open UDP port 8055 between the VMs)"
fi
