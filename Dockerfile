# Run the Space's app outside Hugging Face Spaces. Unverified here: the build machines have no Docker engine.
#   docker build -t image-classifier . && docker run -p 7860:7860 -e MODEL_ID=me/resnet18-cifar10 image-classifier
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860
COPY requirements-space.txt .
# what serving needs (as a Space installs it), with the CPU build of torch: PyPI's default is the CUDA one, whose
# torch, nvidia-* and triton take 5.3 GB of a 5.8 GB install (docs/APP.md)
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements-space.txt
COPY app.py ./
COPY classifier ./classifier
COPY models ./models
EXPOSE 7860
CMD ["python", "app.py"]
