#!/bin/sh
# The example image's command: who runs it, and the greeting from its Env.
echo "$GREETING (running as $(id -un) in $(pwd))"
