# The goat binary alone (no benchmarks, no echo app): `docker run goat:latest manager ...` / `worker ...`.
# Built by deploy/build-images.sh from a context holding only the static binary.
FROM scratch
COPY goat /goat
ENTRYPOINT ["/goat"]
