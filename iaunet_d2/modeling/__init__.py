"""IAUNet model: backbones, pixel decoder, transformer decoder, criterion, meta-arch."""
