// CRC-32C (Castagnoli, reflected, as the crc32c crate and iSCSI): the link frames' checksum.
package amf_crc_pkg;

  localparam logic [31:0] Crc32cPoly = 32'h82f6_3b78;

  // Folds 32 data bits (little-endian byte order) into a running CRC.
  function automatic logic [31:0] crc32c_word(input logic [31:0] crc, input logic [31:0] data);
    logic [31:0] c;
    c = crc ^ data;
    for (int i = 0; i < 32; i++) begin
      c = c[0] ? (c >> 1) ^ Crc32cPoly : (c >> 1);
    end
    crc32c_word = c;
  endfunction

  // CRC-32C of a frame's bytes 0..27 (init all ones, final inversion not applied): seven words
  // folded in one go, so a frame can be checked or sealed every cycle.
  function automatic logic [31:0] crc32c_frame(input logic [223:0] data);
    logic [31:0] c;
    c = '1;
    for (int w = 0; w < 7; w++) begin
      c = crc32c_word(c, data[32*w+:32]);
    end
    crc32c_frame = c;
  endfunction

endpackage
