"""Runnable examples: why dJ/dX matters, and manual training side by side with autograd.

    python -m refbp.examples.stacked       two refbp networks trained end to end
    python -m refbp.examples.saliency      |dy_hat/dX|: which inputs the output depends on
    python -m refbp.examples.adversarial   a step along sign(dJ/dX) that raises the loss
    python -m refbp.examples.train_xor     manual gradient descent vs torch.optim.SGD
    python -m refbp.examples.train_gpt     a character-level GPT, manual gradients vs autograd
    python -m refbp.examples.train_cnn     a tiny CNN on generated 8x8 shapes, manual vs autograd
    python -m refbp.examples.char_rnn      a character-level LSTM (BPTT by hand) vs autograd

``Network.backward_from`` (refbp.nn.network) runs the backward pass from any dJ/da(L), which is
how a network is trained by the gradient that the network above it hands down.
"""

__all__: list[str] = []
