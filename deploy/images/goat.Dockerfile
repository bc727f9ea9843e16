# The goat binary alone: `docker run goat:latest manager ...` / `worker ...`.
# Built by deploy/build-images.sh from a context holding only the static binary.
FROM scratch
COPY goat /goat
ENTRYPOINT ["/goat"]
