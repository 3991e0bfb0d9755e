// CRC-32C (Castagnoli, reflected, as the crc32c crate and iSCSI): the link frames' checksum.
package amf_crc_pkg;

  // CRC-32C of a frame's bytes 0..27 from the all-ones start, without the final inversion,
  // as one XOR per output bit: CRC is affine in the data, so bit j is FrameCrcInit[j] XOR the
  // parity of the data bits in frame_crc_mask(j). A balanced XOR tree per bit, where the
  // bit-serial form unrolled into a 224-step chain (12.7 MHz on an iCE40). The constants are
  // recomputed from the crc32c crate by hdl-model/tests/crc_constants.rs (which fails when they
  // differ), and the frame check and transmit tests compare every frame with it.
  localparam logic [31:0] FrameCrcInit = 32'h08363896;

  function automatic logic [223:0] frame_crc_mask(input int unsigned j);
    unique case (j)
      0: frame_crc_mask = 224'h1f91caf6386f2c25de2753181954cd1ef5e1bbd961745c3ae969f40a;
      1: frame_crc_mask = 224'h3f2395ec70de584bbc4ea63032a99a3debc377b2c2e8b875d2d3e814;
      2: frame_crc_mask = 224'h7e472bd8e1bcb097789d4c606553347bd786ef6585d170eba5a7d029;
      3: frame_crc_mask = 224'hfc8e57b1c379612ef13a98c0caa668f7af0ddecb0ba2e1d74b4fa052;
      4: frame_crc_mask = 224'he68d6595be9dee783c5262998c181cf1abfa064f76319f947ff6b4af;
      5: frame_crc_mask = 224'hd28b01dd4554f0d5a683962b0164f4fda215b7478d17631216849d55;
      6: frame_crc_mask = 224'hba87c94cb2c6cd8e93207f4e1b9d24e5b1cad5567b5a9a1ec460cea0;
      7: frame_crc_mask = 224'h6a9e586f5de2b738f867ad842e6e84d59674117597c1680761a8694a;
      8: frame_crc_mask = 224'hd53cb0debbc56e71f0cf5b085cdd09ab2ce822eb2f82d00ec350d295;
      9: frame_crc_mask = 224'hb5e8ab4b4fe5f0c63fb9e508a0eede48ac31fe0f3e71fc276fc85121;
      10: frame_crc_mask = 224'h74409c60a7a4cda9a15499095889718fad8247c71d97a47436f95648;
      11: frame_crc_mask = 224'he88138c14f499b5342a93212b112e31f5b048f8e3b2f48e86df2ac91;
      12: frame_crc_mask = 224'hce93bb74a6fc1a835b75373d7b710b2043e8a4c5172acdea328cad28;
      13: frame_crc_mask = 224'h82b6bc1f7597192368cd3d62efb6db5e7230f2534f21c7ee8c70ae5a;
      14: frame_crc_mask = 224'h1afcb2c8d3411e630fbd29ddc6397ba211805f7fff37d3e7f188a8be;
      15: frame_crc_mask = 224'h35f96591a6823cc61f7a53bb8c72f7442300befffe6fa7cfe311517d;
      16: frame_crc_mask = 224'h6bf2cb234d04798c3ef4a77718e5ee8846017dfffcdf4f9fc622a2fb;
      17: frame_crc_mask = 224'hd7e596469a08f3187de94eee31cbdd108c02fbfff9be9f3f8c4545f6;
      18: frame_crc_mask = 224'hb05ae67b0c7eca1525f5cec47ac3773fede44c2692096245f1e37fe7;
      19: frame_crc_mask = 224'h7f2406002092b80f95ccce90ecd223612e292394456698b10aaf0bc4;
      20: frame_crc_mask = 224'hfe480c004125701f2b999d21d9a446c25c5247288acd3162155e1789;
      21: frame_crc_mask = 224'he301d2f6ba25cc1b8914695baa1c409a4d45358874ee3efec3d5db18;
      22: frame_crc_mask = 224'hd9926f1b4c24b412cc0f81af4d6c4c2a6f6bd0c988a821c76ec2423a;
      23: frame_crc_mask = 224'hacb514c0a026440046385046838c554a2b361a4a70241fb434ed707e;
      24: frame_crc_mask = 224'h46fbe3777823a4255257f3951e4c678aa38d8f4d813c635280b314f6;
      25: frame_crc_mask = 224'h8df7c6eef047484aa4afe72a3c98cf15471b1e9b0278c6a5016629ed;
      26: frame_crc_mask = 224'h047e472bd8e1bcb097789d4c606553347bd786ef6585d170eba5a7d0;
      27: frame_crc_mask = 224'h08fc8e57b1c379612ef13a98c0caa668f7af0ddecb0ba2e1d74b4fa0;
      28: frame_crc_mask = 224'h11f91caf6386f2c25de2753181954cd1ef5e1bbd961745c3ae969f40;
      29: frame_crc_mask = 224'h23f2395ec70de584bbc4ea63032a99a3debc377b2c2e8b875d2d3e81;
      30: frame_crc_mask = 224'h47e472bd8e1bcb097789d4c606553347bd786ef6585d170eba5a7d02;
      31: frame_crc_mask = 224'h8fc8e57b1c379612ef13a98c0caa668f7af0ddecb0ba2e1d74b4fa05;
      default: frame_crc_mask = '0;
    endcase
  endfunction

  function automatic logic [31:0] crc32c_frame(input logic [223:0] data);
    logic [31:0] c;
    for (int unsigned j = 0; j < 32; j++) begin
      c[j] = FrameCrcInit[j] ^ ^(data & frame_crc_mask(j));
    end
    crc32c_frame = c;
  endfunction

endpackage
