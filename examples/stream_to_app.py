"""Streaming tokens into an application: a worker thread generates, the app consumes a queue.

The same pattern feeds a GUI, a websocket or a robot's speech synthesiser without blocking it.

    python examples/stream_to_app.py
"""

import queue
import threading

import edgert

model = edgert.load("smollm2-135m", n_ctx=1024)
pieces: queue.Queue = queue.Queue()


def worker(messages):
    for record in model.stream(messages, temp=0.3, max_tokens=200):
        pieces.put(record.text)
    pieces.put(None)  # end of reply


messages = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Explain what a memory-mapped file is, in two sentences."}]
threading.Thread(target=worker, args=(messages,), daemon=True).start()
while (piece := pieces.get()) is not None:
    print(piece, end="", flush=True)  # in an app: append to a text widget, send on a socket, ...
print()
