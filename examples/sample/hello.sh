#!/bin/sh
echo "hello from the lower store"
