# The echo API (Goat's first workload): the same static binary, `goat echo`.
# Built by deploy/build-images.sh from a context holding only the static binary.
FROM scratch
COPY goat /goat
EXPOSE 7777
ENTRYPOINT ["/goat", "echo"]
